"""``python main.py --config a.yml [b.yml ...] [key=value ...]`` is ``openood-ext run ...``."""

import sys

from openood_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
