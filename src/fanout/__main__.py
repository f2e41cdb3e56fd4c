"""``python -m fanout``."""

from fanout.launch import main

main()
