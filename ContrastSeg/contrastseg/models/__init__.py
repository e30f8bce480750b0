"""Networks: the coarse 3D U-Net, the refined 2D ResNet + ASPP network, and model files (safetensors + card)."""
