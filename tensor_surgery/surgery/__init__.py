"""Changing models (numpy only): edit operations -> byte runs, the .hexpatch format, the staged-edit
journal, and model writers."""
