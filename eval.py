"""Test a checkpoint: ``python eval.py ckpt_path=<file.ckpt>`` (see conf/eval.yaml)."""

from visiontrain.cli.eval import main

if __name__ == "__main__":
    main()
