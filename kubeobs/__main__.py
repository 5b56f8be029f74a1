from kubeobs.cli import main

raise SystemExit(main())
