// Command tiltcheck checks the project's Tiltfile and kind-config.yaml without Tilt, kind or a
// cluster (none can run in CI):
//
//   - kind-config.yaml is parsed strictly into kind's own v1alpha4 types (an unknown or misspelt
//     field fails) and checked for what kind would refuse;
//   - the Tiltfile is executed as Starlark in Tilt's dialect, with stand-ins for the Tilt builtins
//     it may use. A name Tilt does not define (or that these stand-ins do not know), an argument a
//     builtin does not take, or a fail() fails the check. helm() runs the real `helm template`
//     as Tilt does, so the objects Tilt would apply are known;
//   - then every file it names must exist, every docker_build target must be a stage of its
//     Dockerfile, every image it builds must be used by an object it deploys (in a container or
//     where a k8s_kind locator points), every locator must resolve, and every resource it
//     configures or depends on must exist.
//
// k8s_context() returns the context of the kind cluster the config makes ("kind-<name>") unless
// -context says otherwise. With -json, what was recorded (builds, objects, resources, port
// mappings) is printed as JSON for the project's Rust test to check against the operator.
//
//	tiltcheck [-root DIR] [-tiltfile Tiltfile] [-kind-config kind-config.yaml] [-context CTX] [-json]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Report is what the Tiltfile and the kind config amount to.
type Report struct {
	Context          string              `json:"context"`
	Kind             KindReport          `json:"kind"`
	VersionSettings  []string            `json:"versionSettings"`
	AllowedContexts  []string            `json:"allowedContexts"`
	Files            []string            `json:"files"`
	DockerBuilds     []DockerBuild       `json:"dockerBuilds"`
	DockerfileStages map[string][]string `json:"dockerfileStages"`
	Helm             []HelmCall          `json:"helm"`
	Objects          []map[string]any    `json:"objects"`
	K8sKinds         []K8sKind           `json:"k8sKinds"`
	K8sResources     []K8sResource       `json:"k8sResources"`
	LocalResources   []LocalResource     `json:"localResources"`
	Workloads        []string            `json:"workloads"`
	// Image name (no tag) -> "Kind/name" of every object that uses it.
	Images map[string][]string `json:"images"`
}

type DockerBuild struct {
	Ref        string   `json:"ref"`
	Context    string   `json:"context"`
	Dockerfile string   `json:"dockerfile"`
	Target     string   `json:"target"`
	Ignore     []string `json:"ignore"`
	Only       []string `json:"only"`
}

type HelmCall struct {
	Chart     string   `json:"chart"`
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Values    []string `json:"values"`
	Set       []string `json:"set"`
	SkipCRDs  bool     `json:"skipCrds"`
	Version   string   `json:"helmVersion"`
}

type K8sKind struct {
	Kind          string            `json:"kind"`
	APIVersion    string            `json:"apiVersion"`
	ImageJSONPath []string          `json:"imageJsonPath"`
	ImageObject   map[string]string `json:"imageObject"`
	PodReadiness  string            `json:"podReadiness"`
}

type Link struct {
	URL  string `json:"url"`
	Name string `json:"name"`
}

type K8sResource struct {
	Workload     string   `json:"workload"`
	NewName      string   `json:"newName"`
	Objects      []string `json:"objects"`
	ResourceDeps []string `json:"resourceDeps"`
	Labels       []string `json:"labels"`
	Links        []Link   `json:"links"`
	PortForwards []string `json:"portForwards"`
}

type LocalResource struct {
	Name         string   `json:"name"`
	Cmd          string   `json:"cmd"`
	ServeCmd     string   `json:"serveCmd"`
	Deps         []string `json:"deps"`
	ResourceDeps []string `json:"resourceDeps"`
	Labels       []string `json:"labels"`
	Links        []Link   `json:"links"`
	Readiness    string   `json:"readinessProbe"`
}

// checker gathers what the Tiltfile does and the problems found on the way.
type checker struct {
	root     string
	context  string
	report   Report
	problems []string
	files    map[string]bool
}

func (c *checker) problem(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

// path resolves a path the Tiltfile names (relative to the Tiltfile's folder, as in Tilt) and
// records it; a missing one is a problem.
func (c *checker) path(what, p string) string {
	abs := p
	if !filepath.IsAbs(p) {
		abs = filepath.Join(c.root, p)
	}
	rel, err := filepath.Rel(c.root, abs)
	if err != nil {
		rel = abs
	}
	if !c.files[rel] {
		c.files[rel] = true
		if _, err := os.Stat(abs); err != nil {
			c.problem("%s %q does not exist", what, rel)
		}
	}
	return abs
}

func main() {
	root := flag.String("root", ".", "the folder holding the Tiltfile (paths in it are relative to it)")
	tiltfile := flag.String("tiltfile", "Tiltfile", "the Tiltfile, relative to -root")
	kindConfig := flag.String("kind-config", "kind-config.yaml", "the kind cluster config, relative to -root")
	context := flag.String("context", "", `what k8s_context() returns (default "kind-<name>" of the kind config)`)
	asJSON := flag.Bool("json", false, "print what was recorded as JSON on stdout")
	flag.Parse()

	absRoot, err := filepath.Abs(*root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tiltcheck:", err)
		os.Exit(2)
	}
	c := &checker{root: absRoot, files: map[string]bool{}}
	c.report.DockerfileStages = map[string][]string{}
	c.report.Images = map[string][]string{}

	c.report.Kind = c.checkKindConfig(*kindConfig)
	c.context = *context
	if c.context == "" {
		c.context = "kind-" + c.report.Kind.Name
	}
	c.report.Context = c.context

	if err := c.execTiltfile(*tiltfile); err != nil {
		c.problem("%s", err)
	} else {
		c.verify()
	}

	for f := range c.files {
		c.report.Files = append(c.report.Files, f)
	}
	sort.Strings(c.report.Files)
	if len(c.problems) > 0 {
		fmt.Fprintf(os.Stderr, "tiltcheck: %d problem(s) in %s and %s:\n", len(c.problems), *tiltfile, *kindConfig)
		for _, p := range c.problems {
			fmt.Fprintln(os.Stderr, "  - "+strings.ReplaceAll(p, "\n", "\n    "))
		}
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "tiltcheck: %s and %s are fine (context %s; %d image builds, %d objects, %d files)\n",
		*tiltfile, *kindConfig, c.context, len(c.report.DockerBuilds), len(c.report.Objects), len(c.report.Files))
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(c.report); err != nil {
			fmt.Fprintln(os.Stderr, "tiltcheck:", err)
			os.Exit(2)
		}
	}
}
