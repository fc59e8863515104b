from sparse.cli import main

raise SystemExit(main())
