"""What missing or bad data raises while a dataset is built (processing included): the scripts report these as one
line naming the file and the problem, anything else keeps its traceback."""
from datasets.preprocess import PreprocessWorkerDied
from datasets.scenario import ScenarioError
from datasets.storage import CacheError, UnwritableDirectoryError

DATA_INPUT_ERRORS = (CacheError, ScenarioError, FileNotFoundError, UnwritableDirectoryError, PreprocessWorkerDied)
