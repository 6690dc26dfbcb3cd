"""Site-Modulated Diffusion (SMD): a public, prompt-conditioned diffusion backbone.

The only modules that import diffusers live in this package.
"""
