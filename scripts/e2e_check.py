"""Shared by the Python end-to-end scripts: numbered checks that stop at the first failure."""

checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    checks += 1
    print(f"ok - {what}")


def done():
    print(f"all {checks} checks passed")
