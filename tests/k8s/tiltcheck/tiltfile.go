package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

// Tilt's Starlark dialect (the options Tilt executes every Tiltfile with).
var tiltDialect = &syntax.FileOptions{
	Set:             true,
	GlobalReassign:  true,
	Recursion:       true,
	TopLevelControl: true,
	While:           true,
}

// blob is Tilt's Blob: text (YAML, mostly) with where it came from.
type blob struct{ text, source string }

func (b *blob) String() string        { return b.text }
func (b *blob) Type() string          { return "blob" }
func (b *blob) Freeze()               {}
func (b *blob) Truth() starlark.Bool  { return b.text != "" }
func (b *blob) Hash() (uint32, error) { return starlark.String(b.text).Hash() }

// opaque stands for the values of Tilt's constructors (link, probe, port_forward, ...): only
// their type and, for links, their URL matter here.
type opaque struct {
	typ  string
	desc string
	link *Link
}

func (o *opaque) String() string        { return fmt.Sprintf("%s(%s)", o.typ, o.desc) }
func (o *opaque) Type() string          { return o.typ }
func (o *opaque) Freeze()               {}
func (o *opaque) Truth() starlark.Bool  { return true }
func (o *opaque) Hash() (uint32, error) { return starlark.String(o.String()).Hash() }

// strs reads Tilt's "a string or a list of strings" arguments.
func strs(what string, v starlark.Value) ([]string, error) {
	switch v := v.(type) {
	case nil, starlark.NoneType:
		return nil, nil
	case starlark.String:
		if v == "" {
			return nil, nil
		}
		return []string{string(v)}, nil
	case starlark.Iterable:
		var out []string
		it := v.Iterate()
		defer it.Done()
		var item starlark.Value
		for it.Next(&item) {
			s, ok := starlark.AsString(item)
			if !ok {
				return nil, fmt.Errorf("%s: want strings, got %s", what, item.Type())
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%s: want a string or a list of strings, got %s", what, v.Type())
}

// cmd reads a command: a shell string or an argv list.
func cmd(what string, v starlark.Value) (string, error) {
	if s, ok := v.(starlark.String); ok {
		return string(s), nil
	}
	argv, err := strs(what, v)
	return strings.Join(argv, " "), err
}

func links(v starlark.Value) ([]Link, error) {
	var items []starlark.Value
	switch v := v.(type) {
	case nil, starlark.NoneType:
	case starlark.String, *opaque:
		items = []starlark.Value{v}
	case starlark.Iterable:
		it := v.Iterate()
		defer it.Done()
		var item starlark.Value
		for it.Next(&item) {
			items = append(items, item)
		}
	default:
		return nil, fmt.Errorf("links: want a string, a link() or a list of them, got %s", v.Type())
	}
	var out []Link
	for _, item := range items {
		switch item := item.(type) {
		case starlark.String:
			out = append(out, Link{URL: string(item)})
		case *opaque:
			if item.link == nil {
				return nil, fmt.Errorf("links: want a link(), got %s", item.typ)
			}
			out = append(out, *item.link)
		default:
			return nil, fmt.Errorf("links: want a string or a link(), got %s", item.Type())
		}
	}
	return out, nil
}

// A Tilt resource label (the rule Tilt enforces).
var labelRe = regexp.MustCompile(`^[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?$`)

func (c *checker) labels(v starlark.Value) ([]string, error) {
	out, err := strs("labels", v)
	for _, l := range out {
		if !labelRe.MatchString(l) {
			c.problem("label %q is not a valid Tilt label", l)
		}
	}
	return out, err
}

type builtinFn = func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error)

// builtins: the Tilt builtins this checker stands in for, each taking exactly the parameters
// Tilt's own takes (names as in Tilt's API reference). Anything else is undefined.
func (c *checker) builtins() starlark.StringDict {
	fns := map[string]builtinFn{
		"version_settings":   c.versionSettings,
		"k8s_context":        c.k8sContext,
		"k8s_namespace":      c.k8sNamespace,
		"allow_k8s_contexts": c.allowK8sContexts,
		"fail":               c.fail,
		"warn":               c.warn,
		"docker_build":       c.dockerBuild,
		"blob":               c.blob,
		"helm":               c.helm,
		"k8s_yaml":           c.k8sYAML,
		"k8s_kind":           c.k8sKind,
		"k8s_resource":       c.k8sResource,
		"local_resource":     c.localResource,
		"link":               c.link,
		"port_forward":       c.portForward,
		"probe":              c.probe,
		"tcp_socket_action":  c.tcpSocketAction,
		"http_get_action":    c.httpGetAction,
		"watch_file":         c.watchFile,
		"update_settings":    c.updateSettings,
		"watch_settings":     c.watchSettings,
	}
	out := starlark.StringDict{
		"TRIGGER_MODE_AUTO":   starlark.MakeInt(0),
		"TRIGGER_MODE_MANUAL": starlark.MakeInt(1),
	}
	for name, fn := range fns {
		out[name] = starlark.NewBuiltin(name, fn)
	}
	return out
}

// execTiltfile runs the Tiltfile; a syntax error, an undefined name, a refused argument or a
// fail() comes back as the error.
func (c *checker) execTiltfile(file string) error {
	path := filepath.Join(c.root, file)
	src, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	c.files[file] = true
	thread := &starlark.Thread{
		Name:  "tiltcheck",
		Print: func(_ *starlark.Thread, msg string) { fmt.Fprintln(os.Stderr, msg) },
		Load: func(_ *starlark.Thread, module string) (starlark.StringDict, error) {
			return nil, fmt.Errorf("load(%q): extensions are not checked by tiltcheck", module)
		},
	}
	_, err = starlark.ExecFileOptions(tiltDialect, thread, file, src, c.builtins())
	if err != nil {
		if evalErr, ok := err.(*starlark.EvalError); ok {
			return fmt.Errorf("%s", evalErr.Backtrace())
		}
		msg := err.Error()
		if strings.Contains(msg, "undefined: ") {
			msg += "\n(a name Tilt does not define, or a Tilt builtin tiltcheck has no stand-in for yet: add one in tests/k8s/tiltcheck/tiltfile.go)"
		}
		return fmt.Errorf("%s does not load: %s", file, msg)
	}
	return nil
}

func (c *checker) versionSettings(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	checkUpdates := true
	var constraint string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "check_updates?", &checkUpdates, "constraint?", &constraint); err != nil {
		return nil, err
	}
	if constraint != "" {
		c.report.VersionSettings = append(c.report.VersionSettings, constraint)
	}
	return starlark.None, nil
}

func (c *checker) k8sContext(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs); err != nil {
		return nil, err
	}
	return starlark.String(c.context), nil
}

func (c *checker) k8sNamespace(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs); err != nil {
		return nil, err
	}
	return starlark.String("default"), nil
}

func (c *checker) allowK8sContexts(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var contexts starlark.Value
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "contexts", &contexts); err != nil {
		return nil, err
	}
	list, err := strs("contexts", contexts)
	c.report.AllowedContexts = append(c.report.AllowedContexts, list...)
	return starlark.None, err
}

func (c *checker) fail(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var msg string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "msg", &msg); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("fail(): %s", msg)
}

func (c *checker) warn(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var msg string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "msg", &msg); err != nil {
		return nil, err
	}
	fmt.Fprintln(os.Stderr, "Tiltfile warn():", msg)
	return starlark.None, nil
}

func (c *checker) dockerBuild(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var ref, context, target, network, platform string
	var buildArgs *starlark.Dict
	var dockerfile, dockerfileContents, cache, liveUpdate, ignore, only, entrypoint, containerArgs starlark.Value
	var ssh, secret, extraTag, cacheFrom, extraHosts starlark.Value
	var matchInEnvVars, pull bool
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs,
		"ref", &ref, "context", &context, "build_args?", &buildArgs, "dockerfile?", &dockerfile,
		"dockerfile_contents?", &dockerfileContents, "cache?", &cache, "live_update?", &liveUpdate,
		"match_in_env_vars?", &matchInEnvVars, "ignore?", &ignore, "only?", &only,
		"entrypoint?", &entrypoint, "container_args?", &containerArgs, "target?", &target,
		"ssh?", &ssh, "secret?", &secret, "network?", &network, "extra_tag?", &extraTag,
		"cache_from?", &cacheFrom, "pull?", &pull, "platform?", &platform, "extra_hosts?", &extraHosts,
	); err != nil {
		return nil, err
	}
	if l, ok := liveUpdate.(*starlark.List); ok && l.Len() > 0 || liveUpdate != nil && !ok && liveUpdate != starlark.None {
		return nil, fmt.Errorf("%s: live_update is not modelled by tiltcheck", fn.Name())
	}
	build := DockerBuild{Ref: ref, Target: target}
	build.Context = c.rel(c.path("docker_build context", context))
	ignores, err := strs("ignore", ignore)
	if err != nil {
		return nil, err
	}
	build.Ignore = ignores
	onlys, err := strs("only", only)
	if err != nil {
		return nil, err
	}
	for _, o := range onlys {
		c.path("docker_build only", filepath.Join(context, o))
	}
	build.Only = onlys

	var text string
	switch {
	case dockerfile != nil && dockerfile != starlark.None && dockerfileContents != nil && dockerfileContents != starlark.None:
		return nil, fmt.Errorf("%s: cannot specify both dockerfile and dockerfile_contents", fn.Name())
	case dockerfileContents != nil && dockerfileContents != starlark.None:
		build.Dockerfile = "<dockerfile_contents>"
		text = dockerfileContents.String()
		if s, ok := dockerfileContents.(starlark.String); ok {
			text = string(s)
		}
	default:
		path := filepath.Join(context, "Dockerfile")
		if s, ok := dockerfile.(starlark.String); ok {
			path = string(s)
		}
		abs := c.path("Dockerfile", path)
		build.Dockerfile = c.rel(abs)
		raw, err := os.ReadFile(abs)
		if err != nil {
			c.report.DockerBuilds = append(c.report.DockerBuilds, build)
			return starlark.None, nil // already a problem: the file does not exist
		}
		text = string(raw)
	}
	stages := dockerfileStages(text)
	c.report.DockerfileStages[build.Dockerfile] = stages
	if target != "" && !contains(stages, strings.ToLower(target)) {
		c.problem("docker_build(%q): target %q is not a stage of %s (stages: %s)",
			ref, target, build.Dockerfile, strings.Join(stages, ", "))
	}
	for _, b := range c.report.DockerBuilds {
		if imageName(b.Ref) == imageName(ref) {
			c.problem("docker_build(%q): the image is built twice", ref)
		}
	}
	c.report.DockerBuilds = append(c.report.DockerBuilds, build)
	return starlark.None, nil
}

func (c *checker) rel(abs string) string {
	rel, err := filepath.Rel(c.root, abs)
	if err != nil {
		return abs
	}
	return rel
}

// A FROM line, with its optional flags and stage name.
var fromRe = regexp.MustCompile(`(?i)^\s*FROM\s+(?:--\S+\s+)*\S+(?:\s+AS\s+(\S+))?\s*$`)

// dockerfileStages lists the named stages (`FROM image AS name`), lower-cased as Docker
// compares them.
func dockerfileStages(text string) []string {
	var stages []string
	joined := strings.ReplaceAll(text, "\\\n", " ")
	for _, line := range strings.Split(joined, "\n") {
		if m := fromRe.FindStringSubmatch(line); m != nil && m[1] != "" {
			stages = append(stages, strings.ToLower(m[1]))
		}
	}
	return stages
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (c *checker) blob(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var contents string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "contents", &contents); err != nil {
		return nil, err
	}
	return &blob{text: contents, source: "blob()"}, nil
}

// helm runs `helm template` as Tilt's helm() does (--include-crds, the chart's tests left out,
// the namespace set on objects that name none) and returns the YAML.
func (c *checker) helm(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var chart, name, namespace, kubeVersion string
	var values, set starlark.Value
	var skipCRDs bool
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "paths", &chart, "name?", &name,
		"namespace?", &namespace, "values?", &values, "set?", &set, "kube_version?", &kubeVersion,
		"skip_crds?", &skipCRDs); err != nil {
		return nil, err
	}
	call := HelmCall{Name: name, Namespace: namespace, SkipCRDs: skipCRDs}
	if call.Name == "" {
		call.Name = "chart" // Tilt's default release name
	}
	chartDir := c.path("helm chart", chart)
	call.Chart = c.rel(chartDir)
	c.path("helm chart's Chart.yaml", filepath.Join(chart, "Chart.yaml"))
	valueFiles, err := strs("values", values)
	if err != nil {
		return nil, err
	}
	for _, v := range valueFiles {
		call.Values = append(call.Values, c.rel(c.path("helm values file", v)))
	}
	if call.Set, err = strs("set", set); err != nil {
		return nil, err
	}

	helmBin, err := exec.LookPath("helm")
	if err != nil {
		return nil, fmt.Errorf("helm() needs the helm CLI on PATH, as Tilt does (bash tests/k8s/build.sh builds it): %v", err)
	}
	version, err := exec.Command(helmBin, "version", "--short").Output()
	if err != nil {
		return nil, fmt.Errorf("helm version: %v", err)
	}
	call.Version = strings.TrimSpace(string(version))
	if !strings.HasPrefix(call.Version, "v3.") && !strings.HasPrefix(call.Version, "v4.") || strings.HasPrefix(call.Version, "v3.0.") {
		return nil, fmt.Errorf("helm %s: Tilt's helm() wants Helm 3.1 or later", call.Version)
	}
	argv := []string{"template", call.Name, chartDir}
	if namespace != "" {
		argv = append(argv, "--namespace", namespace)
	}
	if kubeVersion != "" {
		argv = append(argv, "--kube-version", kubeVersion)
	}
	if !skipCRDs {
		argv = append(argv, "--include-crds")
	}
	for _, v := range valueFiles {
		argv = append(argv, "--values", v)
	}
	for _, s := range call.Set {
		argv = append(argv, "--set", s)
	}
	command := exec.Command(helmBin, argv...)
	command.Dir = c.root
	var stderr bytes.Buffer
	command.Stderr = &stderr
	out, err := command.Output()
	if err != nil {
		return nil, fmt.Errorf("helm %s: %v\n%s", strings.Join(argv, " "), err, stderr.String())
	}
	c.report.Helm = append(c.report.Helm, call)
	docs := dropHelmTests(string(out))
	if namespace != "" {
		objects, err := parseYAMLStream(docs)
		if err != nil {
			return nil, fmt.Errorf("helm template output: %v", err)
		}
		var buf bytes.Buffer
		for _, o := range objects {
			meta, _ := o["metadata"].(map[string]any)
			if meta != nil {
				if ns, _ := meta["namespace"].(string); ns == "" {
					meta["namespace"] = namespace
				}
			}
			if err := writeYAMLDoc(&buf, o); err != nil {
				return nil, err
			}
		}
		docs = buf.String()
	}
	return &blob{text: docs, source: "helm: " + call.Chart}, nil
}

// Tilt leaves out the documents `helm template` renders from a chart's templates/tests/.
var helmTestSource = regexp.MustCompile(`(?m)^# Source: .*/tests/`)

func dropHelmTests(stream string) string {
	var kept []string
	for _, doc := range strings.Split(stream, "---\n") {
		if !helmTestSource.MatchString(doc) {
			kept = append(kept, doc)
		}
	}
	return strings.Join(kept, "---\n")
}

func (c *checker) k8sYAML(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var yamlVal starlark.Value
	var allowDuplicates bool
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "yaml", &yamlVal, "allow_duplicates?", &allowDuplicates); err != nil {
		return nil, err
	}
	var texts []string
	if b, ok := yamlVal.(*blob); ok {
		texts = append(texts, b.text)
	} else {
		paths, err := strs("yaml", yamlVal)
		if err != nil {
			return nil, err
		}
		for _, p := range paths {
			raw, err := os.ReadFile(c.path("k8s_yaml file", p))
			if err != nil {
				continue // already a problem
			}
			texts = append(texts, string(raw))
		}
	}
	for _, text := range texts {
		objects, err := parseYAMLStream(text)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", fn.Name(), err)
		}
		for _, o := range objects {
			id := objectID(o)
			for _, seen := range c.report.Objects {
				if objectID(seen) == id && !allowDuplicates {
					return nil, fmt.Errorf("%s: %s is registered twice", fn.Name(), id)
				}
			}
			c.report.Objects = append(c.report.Objects, o)
		}
	}
	return starlark.None, nil
}

func (c *checker) k8sKind(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if len(args) > 1 {
		return nil, fmt.Errorf("%s: got %d positional arguments, want at most 1 (image_json_path is keyword-only)", fn.Name(), len(args))
	}
	var kind, apiVersion, podReadiness string
	var jsonPath starlark.Value
	var imageObject *starlark.Dict
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "kind", &kind, "image_json_path?", &jsonPath,
		"api_version?", &apiVersion, "image_object?", &imageObject, "pod_readiness?", &podReadiness); err != nil {
		return nil, err
	}
	k := K8sKind{Kind: kind, APIVersion: apiVersion, PodReadiness: podReadiness}
	var err error
	if k.ImageJSONPath, err = strs("image_json_path", jsonPath); err != nil {
		return nil, err
	}
	if imageObject != nil {
		k.ImageObject = map[string]string{}
		for _, item := range imageObject.Items() {
			key, _ := starlark.AsString(item[0])
			val, ok := starlark.AsString(item[1])
			if !ok || !contains([]string{"json_path", "repo_field", "tag_field"}, key) {
				return nil, fmt.Errorf("%s: image_object wants {'json_path': str, 'repo_field': str, 'tag_field': str}, got %s", fn.Name(), imageObject)
			}
			k.ImageObject[key] = val
		}
		if len(k.ImageObject) != 3 {
			return nil, fmt.Errorf("%s: image_object wants json_path, repo_field and tag_field, got %s", fn.Name(), imageObject)
		}
		if len(k.ImageJSONPath) > 0 {
			return nil, fmt.Errorf("%s: cannot specify both image_json_path and image_object", fn.Name())
		}
	}
	if podReadiness != "" && podReadiness != "wait" && podReadiness != "ignore" {
		return nil, fmt.Errorf("%s: pod_readiness %q (wait or ignore)", fn.Name(), podReadiness)
	}
	for _, expr := range []string{kind, apiVersion} {
		if _, err := regexp.Compile("(?i)" + expr); err != nil {
			return nil, fmt.Errorf("%s: %v", fn.Name(), err)
		}
	}
	c.report.K8sKinds = append(c.report.K8sKinds, k)
	return starlark.None, nil
}

func (c *checker) k8sResource(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var workload, newName, podReadiness, discovery string
	var portForwards, extraPodSelectors, triggerMode, resourceDeps, objects, linksVal, labelsVal starlark.Value
	autoInit := true
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "workload?", &workload, "new_name?", &newName,
		"port_forwards?", &portForwards, "extra_pod_selectors?", &extraPodSelectors,
		"trigger_mode?", &triggerMode, "resource_deps?", &resourceDeps, "objects?", &objects,
		"auto_init?", &autoInit, "pod_readiness?", &podReadiness, "links?", &linksVal,
		"labels?", &labelsVal, "discovery_strategy?", &discovery); err != nil {
		return nil, err
	}
	r := K8sResource{Workload: workload, NewName: newName}
	var err error
	if r.Objects, err = strs("objects", objects); err != nil {
		return nil, err
	}
	if workload == "" && (newName == "" || len(r.Objects) == 0) {
		return nil, fmt.Errorf("%s: give a workload, or new_name and objects", fn.Name())
	}
	if r.ResourceDeps, err = strs("resource_deps", resourceDeps); err != nil {
		return nil, err
	}
	if r.Labels, err = c.labels(labelsVal); err != nil {
		return nil, err
	}
	if r.Links, err = links(linksVal); err != nil {
		return nil, err
	}
	switch pf := portForwards.(type) {
	case nil, starlark.NoneType:
	case starlark.Int:
		r.PortForwards = []string{pf.String()}
	case *opaque:
		r.PortForwards = []string{pf.desc}
	default:
		if r.PortForwards, err = strs("port_forwards", portForwards); err != nil {
			return nil, err
		}
	}
	c.report.K8sResources = append(c.report.K8sResources, r)
	return starlark.None, nil
}

func (c *checker) localResource(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var name string
	var cmdVal, deps, triggerMode, resourceDeps, ignore, serveCmd, cmdBat, serveCmdBat starlark.Value
	var linksVal, labelsVal, readiness, dir, serveDir starlark.Value
	var env, serveEnv *starlark.Dict
	autoInit := true
	var allowParallel bool
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "name", &name, "cmd?", &cmdVal, "deps?", &deps,
		"trigger_mode?", &triggerMode, "resource_deps?", &resourceDeps, "ignore?", &ignore,
		"auto_init?", &autoInit, "serve_cmd?", &serveCmd, "cmd_bat?", &cmdBat,
		"serve_cmd_bat?", &serveCmdBat, "allow_parallel?", &allowParallel, "links?", &linksVal,
		"labels?", &labelsVal, "env?", &env, "serve_env?", &serveEnv,
		"readiness_probe?", &readiness, "dir?", &dir, "serve_dir?", &serveDir); err != nil {
		return nil, err
	}
	r := LocalResource{Name: name}
	var err error
	if r.Cmd, err = cmd("cmd", cmdVal); err != nil {
		return nil, err
	}
	if r.ServeCmd, err = cmd("serve_cmd", serveCmd); err != nil {
		return nil, err
	}
	if r.Cmd == "" && r.ServeCmd == "" {
		return nil, fmt.Errorf("%s(%q): needs a cmd or a serve_cmd", fn.Name(), name)
	}
	depPaths, err := strs("deps", deps)
	if err != nil {
		return nil, err
	}
	for _, d := range depPaths {
		r.Deps = append(r.Deps, c.rel(c.path("local_resource deps", d)))
	}
	for _, d := range []starlark.Value{dir, serveDir} {
		if s, ok := d.(starlark.String); ok && s != "" {
			c.path("local_resource dir", string(s))
		}
	}
	if r.ResourceDeps, err = strs("resource_deps", resourceDeps); err != nil {
		return nil, err
	}
	if r.Labels, err = c.labels(labelsVal); err != nil {
		return nil, err
	}
	if r.Links, err = links(linksVal); err != nil {
		return nil, err
	}
	switch p := readiness.(type) {
	case nil, starlark.NoneType:
	case *opaque:
		if p.typ != "probe" {
			return nil, fmt.Errorf("%s: readiness_probe wants a probe(), got %s", fn.Name(), p.typ)
		}
		r.Readiness = p.desc
	default:
		return nil, fmt.Errorf("%s: readiness_probe wants a probe(), got %s", fn.Name(), p.Type())
	}
	for _, other := range c.report.LocalResources {
		if other.Name == name {
			return nil, fmt.Errorf("%s: a resource %q already exists", fn.Name(), name)
		}
	}
	c.report.LocalResources = append(c.report.LocalResources, r)
	return starlark.None, nil
}

func (c *checker) link(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var url, name string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "url", &url, "name?", &name); err != nil {
		return nil, err
	}
	return &opaque{typ: "link", desc: url, link: &Link{URL: url, Name: name}}, nil
}

func (c *checker) portForward(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var localPort, containerPort int
	var name, linkPath, host string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "local_port", &localPort,
		"container_port?", &containerPort, "name?", &name, "link_path?", &linkPath, "host?", &host); err != nil {
		return nil, err
	}
	if containerPort == 0 {
		containerPort = localPort
	}
	return &opaque{typ: "port_forward", desc: fmt.Sprintf("%d:%d", localPort, containerPort)}, nil
}

func (c *checker) probe(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var initialDelay, timeout, period, successThreshold, failureThreshold int
	var execAction, httpGet, tcpSocket starlark.Value
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "initial_delay_secs?", &initialDelay,
		"timeout_secs?", &timeout, "period_secs?", &period, "success_threshold?", &successThreshold,
		"failure_threshold?", &failureThreshold, "exec?", &execAction, "http_get?", &httpGet,
		"tcp_socket?", &tcpSocket); err != nil {
		return nil, err
	}
	var actions []string
	for _, a := range []starlark.Value{execAction, httpGet, tcpSocket} {
		if o, ok := a.(*opaque); ok {
			actions = append(actions, o.String())
		} else if a != nil && a != starlark.None {
			return nil, fmt.Errorf("%s: want an action, got %s", fn.Name(), a.Type())
		}
	}
	if len(actions) != 1 {
		return nil, fmt.Errorf("%s: exactly one of exec, http_get and tcp_socket, got %d", fn.Name(), len(actions))
	}
	return &opaque{typ: "probe", desc: actions[0]}, nil
}

func (c *checker) tcpSocketAction(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var port int
	host := "localhost"
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "port", &port, "host?", &host); err != nil {
		return nil, err
	}
	return &opaque{typ: "tcp_socket_action", desc: fmt.Sprintf("%s:%d", host, port)}, nil
}

func (c *checker) httpGetAction(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var port int
	host, scheme, path := "localhost", "http", ""
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "port", &port, "host?", &host, "scheme?", &scheme, "path?", &path); err != nil {
		return nil, err
	}
	return &opaque{typ: "http_get_action", desc: fmt.Sprintf("%s://%s:%d%s", scheme, host, port, path)}, nil
}

func (c *checker) watchFile(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var path string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "file_path", &path); err != nil {
		return nil, err
	}
	c.path("watch_file", path)
	return starlark.None, nil
}

func (c *checker) updateSettings(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var maxParallel, upsertTimeout int
	var suppress starlark.Value
	var serverSideApply string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "max_parallel_updates?", &maxParallel,
		"k8s_upsert_timeout_secs?", &upsertTimeout, "suppress_unused_image_warnings?", &suppress,
		"k8s_server_side_apply?", &serverSideApply); err != nil {
		return nil, err
	}
	return starlark.None, nil
}

func (c *checker) watchSettings(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var ignore starlark.Value
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "ignore", &ignore); err != nil {
		return nil, err
	}
	_, err := strs("ignore", ignore)
	return starlark.None, err
}
