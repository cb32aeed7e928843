"""Train a model: ``python train.py model=resnet data=cifar10`` (see conf/train.yaml)."""

from visiontrain.cli.train import main

if __name__ == "__main__":
    main()
