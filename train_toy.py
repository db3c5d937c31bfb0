"""Train Coconut on a reasoning task with the paper's curriculum: `python train_toy.py --help` lists every option.
The command lives in `coconut_pytorch.training.command` (installed as `coconut-train`)."""

from coconut_pytorch.training.command import main

if __name__ == '__main__':
    main()
