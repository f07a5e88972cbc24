"""Reporters: `[[reporters]] type = ...`: progress shown while a run trains."""
