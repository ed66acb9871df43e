"""Alignment Playground: compare base, SFT and preference-tuned answers, vote, and watch DPO learn."""

__version__ = "0.1.0"
