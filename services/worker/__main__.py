"""`python -m services.worker`.

Instance processes are spawned, and spawn re-imports this module in each child under the
name __mp_main__: keep it import-free so children start fast.
"""

if __name__ == "__main__":
    from services.worker.app import main

    main()
