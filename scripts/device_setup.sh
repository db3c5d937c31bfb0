# Source at the start of a device command:  source scripts/device_setup.sh
# Installs the offline wheels in .whl/ into /tmp/site and puts the project itself on PYTHONPATH.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
python3 -c "
import torch, x_transformers, hyper_connections
from importlib.metadata import version
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
print(f'torch {torch.__version__} | {gpu} | x-transformers {version(\"x-transformers\")} | hyper-connections {version(\"hyper-connections\")}')
"
