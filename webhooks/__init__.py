"""The webhook receiver (a Flask app turning registry events into conversion requests); see issue #5."""
