
from layers.attention_layer import AttentionLayer
from layers.fourier_embedding import FourierEmbedding
from layers.mlp_layer import MLPLayer
