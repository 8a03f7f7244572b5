"""An env file that defines no Environment at all."""

ANSWER = 42
