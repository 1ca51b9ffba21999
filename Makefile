.PHONY: quickstart test setup
quickstart:
	bash scripts/quickstart.sh
test:
	bash scripts/test.sh
setup:
	bash scripts/setup.sh
