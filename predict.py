"""Predict on image files: ``python predict.py ckpt_path=<file.ckpt> input=<files>`` (see conf/predict.yaml)."""

from visiontrain.cli.predict import main

if __name__ == "__main__":
    main()
