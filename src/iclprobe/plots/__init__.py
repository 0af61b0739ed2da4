"""Figures, one module per stage; `style` holds what they share."""
