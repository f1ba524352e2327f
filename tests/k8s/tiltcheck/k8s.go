package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"k8s.io/client-go/util/jsonpath"
	"sigs.k8s.io/yaml"
)

// Kinds whose objects carry pods, which Tilt makes resources of by itself.
var podKinds = map[string]bool{
	"Pod": true, "Deployment": true, "ReplicaSet": true, "StatefulSet": true, "DaemonSet": true,
	"Job": true, "CronJob": true, "ReplicationController": true,
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// parseYAMLStream reads a multi-document YAML stream into JSON-like objects (List kinds
// flattened, empty documents dropped).
func parseYAMLStream(text string) ([]map[string]any, error) {
	var out []map[string]any
	for _, doc := range docSeparator.Split(text, -1) {
		raw, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return nil, err
		}
		var value any
		if err := json.Unmarshal(raw, &value); err != nil {
			return nil, err
		}
		if value == nil {
			continue
		}
		obj, ok := value.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("a YAML document is not an object: %s", raw)
		}
		if items, ok := obj["items"].([]any); ok && strings.HasSuffix(str(obj, "kind"), "List") {
			for _, item := range items {
				if m, ok := item.(map[string]any); ok {
					out = append(out, m)
				}
			}
			continue
		}
		if str(obj, "kind") == "" || str(obj, "apiVersion") == "" || str(obj, "metadata", "name") == "" {
			return nil, fmt.Errorf("a YAML document lacks kind, apiVersion or metadata.name: %s", raw)
		}
		out = append(out, obj)
	}
	return out, nil
}

func writeYAMLDoc(buf *bytes.Buffer, obj map[string]any) error {
	raw, err := yaml.Marshal(obj)
	if err != nil {
		return err
	}
	buf.WriteString("---\n")
	buf.Write(raw)
	return nil
}

// str reads a string at a path of map keys ("" when absent).
func str(obj map[string]any, keys ...string) string {
	var cur any = obj
	for _, k := range keys {
		m, ok := cur.(map[string]any)
		if !ok {
			return ""
		}
		cur = m[k]
	}
	s, _ := cur.(string)
	return s
}

// objectID names an object as Tilt's object selectors do: name:kind:namespace.
func objectID(obj map[string]any) string {
	return strings.ToLower(fmt.Sprintf("%s:%s:%s", str(obj, "metadata", "name"), str(obj, "kind"), str(obj, "metadata", "namespace")))
}

func describe(obj map[string]any) string {
	return str(obj, "kind") + "/" + str(obj, "metadata", "name")
}

// imageName is a reference without its tag or digest, as Tilt matches builds to references.
func imageName(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	ref = strings.TrimPrefix(ref, "docker.io/")
	return strings.TrimPrefix(ref, "library/")
}

// containerImages finds the images of every container list in an object (pod specs at any depth:
// Pods, workload templates, CronJob job templates).
func containerImages(v any, found func(string)) {
	switch v := v.(type) {
	case map[string]any:
		for key, child := range v {
			if list, ok := child.([]any); ok && (key == "containers" || key == "initContainers" || key == "ephemeralContainers") {
				for _, item := range list {
					if m, ok := item.(map[string]any); ok {
						if image, ok := m["image"].(string); ok {
							found(image)
						}
					}
				}
				continue
			}
			containerImages(child, found)
		}
	case []any:
		for _, child := range v {
			containerImages(child, found)
		}
	}
}

type kindMatcher struct {
	K8sKind
	kind, apiVersion *regexp.Regexp
	matched          int
}

func (m *kindMatcher) matches(obj map[string]any) bool {
	return m.kind.MatchString(str(obj, "kind")) && m.apiVersion.MatchString(str(obj, "apiVersion"))
}

// locate evaluates a k8s_kind's image locators on an object, as Tilt does: a path that is
// missing, or that points at something other than an image, is an error.
func (m *kindMatcher) locate(obj map[string]any) ([]string, error) {
	var images []string
	paths := m.ImageJSONPath
	if m.ImageObject != nil {
		paths = []string{m.ImageObject["json_path"]}
	}
	for _, path := range paths {
		jp := jsonpath.New("image locator").AllowMissingKeys(false)
		if err := jp.Parse(path); err != nil {
			return nil, fmt.Errorf("json path %q: %v", path, err)
		}
		results, err := jp.FindResults(obj)
		if err != nil {
			return nil, fmt.Errorf("json path %q on %s: %v", path, describe(obj), err)
		}
		for _, set := range results {
			for _, v := range set {
				if m.ImageObject == nil {
					s, ok := v.Interface().(string)
					if !ok {
						return nil, fmt.Errorf("json path %q on %s: %v is not an image string", path, describe(obj), v.Interface())
					}
					images = append(images, s)
					continue
				}
				fields, ok := v.Interface().(map[string]any)
				if !ok {
					return nil, fmt.Errorf("image_object %q on %s: %v is not an object", path, describe(obj), v.Interface())
				}
				repo, _ := fields[m.ImageObject["repo_field"]].(string)
				if repo == "" {
					return nil, fmt.Errorf("image_object %q on %s: no %q field in %v", path, describe(obj), m.ImageObject["repo_field"], fields)
				}
				if tag, _ := fields[m.ImageObject["tag_field"]].(string); tag != "" {
					repo += ":" + tag
				}
				images = append(images, repo)
			}
		}
	}
	if len(paths) > 0 && len(images) == 0 {
		return nil, fmt.Errorf("k8s_kind(%q): its image locator finds no image in %s", m.Kind, describe(obj))
	}
	return images, nil
}

// verify checks what the Tiltfile registered once it has run: images, locators, resources.
func (c *checker) verify() {
	var matchers []*kindMatcher
	for _, k := range c.report.K8sKinds {
		matchers = append(matchers, &kindMatcher{
			K8sKind:    k,
			kind:       regexp.MustCompile("(?i)" + k.Kind),
			apiVersion: regexp.MustCompile("(?i)" + k.APIVersion),
		})
	}

	workloadObjects := map[string][]map[string]any{}
	use := func(image string, obj map[string]any) {
		name := imageName(image)
		c.report.Images[name] = append(c.report.Images[name], describe(obj))
	}
	for _, obj := range c.report.Objects {
		workload := podKinds[str(obj, "kind")]
		containerImages(obj, func(image string) { use(image, obj) })
		for _, m := range matchers {
			if !m.matches(obj) {
				continue
			}
			m.matched++
			workload = true
			images, err := m.locate(obj)
			if err != nil {
				c.problem("%v", err)
			}
			for _, image := range images {
				use(image, obj)
			}
		}
		if workload {
			name := str(obj, "metadata", "name")
			workloadObjects[name] = append(workloadObjects[name], obj)
		}
	}
	for _, m := range matchers {
		if m.matched == 0 {
			c.problem("k8s_kind(%q, api_version=%q) matches no object the Tiltfile deploys", m.Kind, m.APIVersion)
		}
	}
	for image := range c.report.Images {
		sort.Strings(c.report.Images[image])
	}
	for _, b := range c.report.DockerBuilds {
		if len(c.report.Images[imageName(b.Ref)]) == 0 {
			c.problem("docker_build(%q): no object the Tiltfile deploys uses this image, so Tilt would never build it", b.Ref)
		}
	}

	// Resource names, as Tilt assembles them: a workload is named after its object
	// (name:kind when two workloads share a name).
	resources := map[string]bool{"uncategorized": true}
	for name, objs := range workloadObjects {
		if len(objs) == 1 {
			resources[name] = true
			continue
		}
		for _, o := range objs {
			resources[strings.ToLower(name+":"+str(o, "kind"))] = true
		}
	}
	for name := range resources {
		if name != "uncategorized" {
			c.report.Workloads = append(c.report.Workloads, name)
		}
	}
	sort.Strings(c.report.Workloads)
	for _, r := range c.report.K8sResources {
		if r.Workload != "" && !resources[r.Workload] {
			c.problem("k8s_resource(%q): no such workload (workloads: %s)", r.Workload, strings.Join(c.report.Workloads, ", "))
		}
		for _, sel := range r.Objects {
			n := 0
			for _, obj := range c.report.Objects {
				if selectorMatches(sel, obj) {
					n++
				}
			}
			if n != 1 {
				c.problem("k8s_resource(%q): object selector %q matches %d objects (want 1)", r.Workload+r.NewName, sel, n)
			}
		}
		if r.NewName != "" {
			resources[r.NewName] = true
		}
	}
	for _, l := range c.report.LocalResources {
		if resources[l.Name] {
			c.problem("local_resource(%q): a Kubernetes resource has that name", l.Name)
		}
		resources[l.Name] = true
	}
	checkDeps := func(who string, deps []string) {
		for _, d := range deps {
			if !resources[d] {
				c.problem("%s: resource_deps names %q, which is no resource", who, d)
			}
		}
	}
	for _, r := range c.report.K8sResources {
		checkDeps(fmt.Sprintf("k8s_resource(%q)", r.Workload+r.NewName), r.ResourceDeps)
	}
	for _, l := range c.report.LocalResources {
		checkDeps(fmt.Sprintf("local_resource(%q)", l.Name), l.ResourceDeps)
	}
}

// selectorMatches: Tilt's object selector "name[:kind[:namespace]]", compared case-insensitively.
func selectorMatches(sel string, obj map[string]any) bool {
	want := strings.Split(strings.ToLower(sel), ":")
	have := strings.Split(objectID(obj), ":")
	for i, w := range want {
		if i >= len(have) || w != have[i] {
			return false
		}
	}
	return true
}
