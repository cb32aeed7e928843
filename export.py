"""Export a checkpoint: ``python export.py ckpt_path=<file.ckpt> format=onnx`` (see conf/export.yaml)."""

from visiontrain.cli.export import main

if __name__ == "__main__":
    main()
