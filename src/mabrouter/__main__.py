from mabrouter.cli import main

raise SystemExit(main())
