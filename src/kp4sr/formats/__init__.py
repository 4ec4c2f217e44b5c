"""Readers for the paper's dataset formats (KB4Rec/Freebase, the KP4SR release)."""
