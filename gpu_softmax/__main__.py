import sys

from gpu_softmax.cli import main

sys.exit(main())
