"""The end-to-end CPU demo: synthetic data, tiny pretrained towers, data prep, stage 1, CapFilt, stage 1 again,
stage 2, evaluation and exports, each through the real library and jobs (see demo/run.py).

    python jobs/demo.py [--out DIR] [--quick] [--seed N]      (default outputs/demo)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from demo.run import main  # noqa: E402

if __name__ == "__main__":
    main()
