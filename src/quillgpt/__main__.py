from quillgpt.cli import main

raise SystemExit(main())
