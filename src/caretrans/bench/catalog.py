"""What `caretrans bench` compares: model names and runtimes (plain data, so the CLI parser loads no torch)."""

CARE_MODELS = ('care_s0', 'care_s1', 'care_s2')
# The peers of the paper's Table 1 that timm has.
PEERS = ('mobilenetv2_100', 'mobilenetv2_140', 'mobileone_s0', 'mobileone_s1', 'mobileone_s2', 'mobileone_s3',
         'mobileone_s4', 'fastvit_t8', 'fastvit_t12', 'fastvit_s12', 'fastvit_sa12', 'efficientformer_l1',
         'deit_tiny_patch16_224', 'pvt_v2_b0', 'resnet18')
RUNTIMES = ('eager', 'onnxruntime', 'openvino', 'executorch', 'litert')
# ExecuTorch and LiteRT are optional extras and lower or convert each model for tens of seconds.
DEFAULT_RUNTIMES = RUNTIMES[:3]
