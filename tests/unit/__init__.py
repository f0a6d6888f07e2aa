"""The unit suite: pure logic, no root, no namespaces, no daemon; runs in seconds.

A package, so its modules are `unit.test_*` and may share a basename with a
root-suite file (tests/unit/test_judge.py beside tests/judging/test_judge.py).
"""
