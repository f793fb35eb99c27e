"""python -m datasets.synthetic --out DIR --split train --num N [--seed S] [--profile P] [--num_workers K]"""
import sys

from datasets.synthetic.cli import main

sys.exit(main())
