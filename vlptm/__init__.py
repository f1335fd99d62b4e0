"""vlptm: vision-language pretraining with region features, single/dual-stream encoders and FAISS."""
__version__ = "0.1.0"
