"""Adapters that make common detectors follow mldbg's adapter protocol (see
``ml_debugger.core.detection.adapter``). Each imports its toolkit only when used."""
