
from transforms.target_builder import TargetBuilder
from transforms.ssl_views import SSLViews
