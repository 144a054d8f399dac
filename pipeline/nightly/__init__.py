"""Rebuild many recipes for many targets, compare with the previous night, report."""
