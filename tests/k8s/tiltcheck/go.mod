// tiltcheck: executes the Tiltfile with stand-ins for Tilt's builtins and checks what it refers
// to, and parses kind-config.yaml strictly (see main.go; built by tests/k8s/build.sh).
module chat-backend/tests/k8s/tiltcheck

go 1.26.0

require (
	go.starlark.net v0.0.0-20260908191801-89a6a09411d5
	k8s.io/client-go v0.37.2
	sigs.k8s.io/kind v0.32.0
	sigs.k8s.io/yaml v1.6.0
)

require (
	github.com/pkg/errors v0.9.1 // indirect
	go.yaml.in/yaml/v2 v2.4.4 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/sys v0.47.0 // indirect
)
