"""Test support: real processes (registry), an image factory, and a fault-injecting proxy."""
