from nydus_hybrid.cli import main

raise SystemExit(main())
