"""ALBERT pretraining pieces for the DeDLOC reproduction: data pipeline and demo corpus."""
