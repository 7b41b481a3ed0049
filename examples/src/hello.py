#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""A tiny script: the stamp goes after the shebang and the encoding line."""


def main() -> None:
    print("hello from onex")


if __name__ == "__main__":
    main()
