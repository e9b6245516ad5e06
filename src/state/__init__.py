"""Typed, validated views of the charm's inputs, built from plain values; no ops import.

Each input (config, the backend relation's databag and secret, the peer data) gets one immutable
value built by a ``from_*`` function with its own error type, so that the charm maps errors to
statuses in one place.
"""
