
from utils.submission import check_coverage, write_submission
