# Shortcuts; scripts/test.sh is what CI runs.
.PHONY: run test lint fmt bench verify stack stack-down

run:            ## run the diamond example on the embedded defaults
	cargo run -p ferry-cli --no-default-features -- run examples/diamond.yaml

test:           ## formatting, lints and every test (what CI runs)
	./scripts/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

bench:          ## 10,000-task fan-out and a paced run on the embedded system (release build)
	cargo run --release -p ferry-loadtest -- fanout --tasks 10000
	cargo run --release -p ferry-loadtest -- paced --rate 100 --tasks 2000

stack:          ## the local stack of docker-compose.yml, with ferry's image built from this checkout
	docker compose up -d --build

stack-down:
	docker compose down

schemas:        ## regenerate schemas/ from the Rust types
	FERRY_BLESS=1 cargo test -p ferry-flow --test schemas

verify: test
