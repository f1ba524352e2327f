// Command promcheck parses PromQL expressions with Prometheus' own parser
// (github.com/prometheus/prometheus/promql/parser) and reports what each one reads, so that the
// project's Rust tests can check the Grafana dashboard and the PrometheusRule against the metrics
// the services really export.
//
// Input (stdin): a JSON array of expressions. Output (stdout): a JSON array with one object per
// expression, in order:
//
//	{"expr": "...", "error": "..."}                       the expression does not parse
//	{"expr": "...", "selectors": [...], "labels": [...]}  it parses
//
// where each selector is {"name": "<metric>", "matchers": [{"label", "op", "value"}]} (the
// metric name's own matcher left out) and each label is {"label", "clause"}: a label the
// expression groups by (clause "by", "without") or matches on ("on", "ignoring", "group_left",
// "group_right"). A parse error is reported, not fatal: the exit status is 0 once every
// expression has an answer, 1 on bad input.
//
//	echo '["rate(x_total[5m])"]' | promcheck
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

type matcher struct {
	Label string `json:"label"`
	Op    string `json:"op"`
	Value string `json:"value"`
}

type selector struct {
	Name     string    `json:"name"`
	Matchers []matcher `json:"matchers"`
}

type label struct {
	Label  string `json:"label"`
	Clause string `json:"clause"`
}

type result struct {
	Expr      string     `json:"expr"`
	Error     string     `json:"error,omitempty"`
	Selectors []selector `json:"selectors,omitempty"`
	Labels    []label    `json:"labels,omitempty"`
}

// Prometheus' defaults: no experimental functions or modifiers, so what parses here parses on a
// Prometheus started without feature flags.
var promql = parser.NewParser(parser.Options{})

func check(input string) result {
	out := result{Expr: input}
	expr, err := promql.ParseExpr(input)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	out.Selectors = []selector{}
	out.Labels = []label{}
	add := func(clause string, names []string) {
		for _, n := range names {
			out.Labels = append(out.Labels, label{Label: n, Clause: clause})
		}
	}
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			s := selector{Name: n.Name, Matchers: []matcher{}}
			for _, m := range n.LabelMatchers {
				if m.Name == labels.MetricName {
					if s.Name == "" && m.Type == labels.MatchEqual {
						s.Name = m.Value
					}
					continue
				}
				s.Matchers = append(s.Matchers, matcher{Label: m.Name, Op: m.Type.String(), Value: m.Value})
			}
			out.Selectors = append(out.Selectors, s)
		case *parser.AggregateExpr:
			if n.Without {
				add("without", n.Grouping)
			} else {
				add("by", n.Grouping)
			}
		case *parser.BinaryExpr:
			if vm := n.VectorMatching; vm != nil {
				if vm.On {
					add("on", vm.MatchingLabels)
				} else {
					add("ignoring", vm.MatchingLabels)
				}
				switch vm.Card {
				case parser.CardManyToOne:
					add("group_left", vm.Include)
				case parser.CardOneToMany:
					add("group_right", vm.Include)
				}
			}
		}
		return nil
	})
	return out
}

func main() {
	var exprs []string
	if err := json.NewDecoder(os.Stdin).Decode(&exprs); err != nil {
		fmt.Fprintf(os.Stderr, "promcheck: stdin must be a JSON array of PromQL expressions: %v\n", err)
		os.Exit(1)
	}
	results := make([]result, 0, len(exprs))
	for _, e := range exprs {
		results = append(results, check(e))
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(results); err != nil {
		fmt.Fprintf(os.Stderr, "promcheck: %v\n", err)
		os.Exit(1)
	}
}
