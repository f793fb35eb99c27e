
from transforms.target_builder import TargetBuilder
