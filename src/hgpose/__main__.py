from hgpose.cli import main

raise SystemExit(main())
