"""Fault injection: exists in a server only with `triton-guard serve --chaos`.

protocol.py is what a fault is and the control files that hold it, command.py
what `triton-guard chaos` sends, hook.py what a target model runs;
repository/ holds the `chaos` control model.
"""
