from setuptools import find_packages, setup

setup(
    name = 'coconut-pytorch',
    packages = find_packages(exclude = ['tests', 'tests.*', 'benchmarks', 'scripts']),
    package_data = {'coconut_pytorch.data.tasks': ['*.json']},
    version = '0.1.0',
    license = 'MIT',
    description = 'Coconut (Chain of Continuous Thought) in PyTorch: latent reasoning with a Transformer of its own',
    long_description = open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type = 'text/markdown',
    keywords = ['artificial intelligence', 'deep learning', 'transformers', 'latent reasoning', 'chain of thought'],
    python_requires = '>=3.9',
    install_requires = [
        'torch>=2.4',
        'einops>=0.8',
        'x-transformers>=2.0',
        'hyper-connections>=0.4.11,<0.5',  # tested with 0.4.11; Transformer computes its HyperConnections' math itself
                                           # from their parameters (mix_streams), so a new formula must not slip in
        'tqdm',
        'matplotlib',
        'pyyaml',     # --config recipes (recipes/*.yaml)
    ],
    entry_points = {
        'console_scripts': [
            'coconut-train = coconut_pytorch.training.command:main',
            'coconut-eval = coconut_pytorch.evaluate:main',
            'coconut-sample = coconut_pytorch.sample:main',
            'coconut-export = coconut_pytorch.export:main',
            'coconut-search-analysis = coconut_pytorch.search_analysis:main',
            'coconut-depth-eval = coconut_pytorch.depth_eval:main',
        ],
    },
    extras_require = {
        'test': ['pytest', 'pytest-xdist'],
        'hf': ['transformers>=4.56'],     # Hugging Face causal LMs as backbones (coconut_pytorch.hf, which says why 4.56)
    },
    classifiers = [
        'Development Status :: 4 - Beta',
        'Intended Audience :: Science/Research',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
        'License :: OSI Approved :: MIT License',
        'Programming Language :: Python :: 3',
    ],
)
