"""``python -m mlopslab_pipeline train ...``: the pipeline without Airflow (see ``job.py``)."""

import sys

from mlopslab_pipeline.job import main

sys.exit(main())
