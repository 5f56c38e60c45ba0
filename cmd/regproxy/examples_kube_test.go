package main

import (
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// k8sObject is the part of a Kubernetes object the examples' tests read.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec struct {
		Replicas *int `yaml:"replicas"` // Deployment
		Strategy struct {
			Type string `yaml:"type"`
		} `yaml:"strategy"` // Deployment
		Selector    map[string]any `yaml:"selector"`    // Service; a Deployment's holds matchLabels
		Ports       []kubePort     `yaml:"ports"`       // Service
		AccessModes []string       `yaml:"accessModes"` // PersistentVolumeClaim
		Template    struct {
			Metadata struct {
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec k8sPodSpec `yaml:"spec"`
		} `yaml:"template"` // Deployment
	} `yaml:"spec"`
}

type k8sPodSpec struct {
	TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot bool `yaml:"runAsNonRoot"`
		RunAsUser    int  `yaml:"runAsUser"`
	} `yaml:"securityContext"`
	Containers []k8sContainer `yaml:"containers"`
	Volumes    []struct {
		Name                  string `yaml:"name"`
		PersistentVolumeClaim struct {
			ClaimName string `yaml:"claimName"`
		} `yaml:"persistentVolumeClaim"`
		Secret struct {
			SecretName string `yaml:"secretName"`
		} `yaml:"secret"`
	} `yaml:"volumes"`
}

type k8sContainer struct {
	Name    string     `yaml:"name"`
	Command []string   `yaml:"command"`
	Args    []string   `yaml:"args"`
	Ports   []kubePort `yaml:"ports"`
	Env     []struct {
		Name string `yaml:"name"`
	} `yaml:"env"`
	ReadinessProbe  k8sProbe `yaml:"readinessProbe"`
	LivenessProbe   k8sProbe `yaml:"livenessProbe"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type k8sProbe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

// TestKubernetesManifestsFlags checks every Deployment under
// examples/kubernetes, the Azure one included: each flag its container
// passes (command, args) and each REGPROXY_ variable it sets must be one
// that serve takes.
func TestKubernetesManifestsFlags(t *testing.T) {
	t.Parallel()
	var deployments int
	err := filepath.WalkDir(filepath.Join(examplesDir, "kubernetes"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		for _, o := range decodeAll[k8sObject](t, path, false) {
			if o.Kind != "Deployment" {
				continue
			}
			deployments++
			for _, c := range o.Spec.Template.Spec.Containers {
				where := path + ": container " + c.Name
				checkServeArgs(t, where, append(slices.Clone(c.Command), c.Args...))
				var names []string
				for _, e := range c.Env {
					names = append(names, e.Name)
				}
				checkServeEnv(t, where, names)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if deployments < 2 {
		t.Errorf("%d Deployments under examples/kubernetes, want regproxy.yaml's and azure's at least", deployments)
	}
}

// TestKubernetesDiskExample checks examples/kubernetes/regproxy.yaml: a
// PersistentVolumeClaim for the data directory, mounted by one replica
// (ReadWriteOnce: the old pod lets go before the new one starts), the
// image's user and a read-only root, readiness and liveness on /healthz,
// Prometheus annotations that name the container's port and /metrics, an
// htpasswd file mounted where --htpasswd points, and a Service on the
// pods' proxy port.
func TestKubernetesDiskExample(t *testing.T) {
	t.Parallel()
	objects := map[string]k8sObject{}
	for _, o := range decodeAll[k8sObject](t, filepath.Join(examplesDir, "kubernetes", "regproxy.yaml"), false) {
		if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
			t.Errorf("an object without apiVersion, kind or name: %+v", o)
		}
		objects[o.Kind+"/"+o.Metadata.Name] = o
	}
	pvc, dep, svc := objects["PersistentVolumeClaim/regproxy-data"], objects["Deployment/regproxy"], objects["Service/regproxy"]
	if pvc.Kind == "" || dep.Kind == "" || svc.Kind == "" {
		t.Fatalf("want PersistentVolumeClaim regproxy-data, Deployment regproxy and Service regproxy; have %v", mapsKeys(objects))
	}
	if !slices.Equal(pvc.Spec.AccessModes, []string{"ReadWriteOnce"}) || dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 || dep.Spec.Strategy.Type != "Recreate" {
		t.Errorf("claim %q, %v replicas, strategy %q; want ReadWriteOnce, 1 and Recreate", pvc.Spec.AccessModes, dep.Spec.Replicas, dep.Spec.Strategy.Type)
	}
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if !pod.SecurityContext.RunAsNonRoot || pod.SecurityContext.RunAsUser != 65532 || !c.SecurityContext.ReadOnlyRootFilesystem ||
		c.SecurityContext.AllowPrivilegeEscalation == nil || *c.SecurityContext.AllowPrivilegeEscalation {
		t.Errorf("pod security %+v, container %+v; want the image's user 65532, non-root, a read-only root and no privilege escalation",
			pod.SecurityContext, c.SecurityContext)
	}
	if pod.TerminationGracePeriodSeconds <= 30 {
		t.Errorf("terminationGracePeriodSeconds %d, want more than the 30s --shutdown-grace", pod.TerminationGracePeriodSeconds)
	}
	mounts := checkKubeVolumes(t, pod, c, pvc.Metadata.Name)
	checkKubeHtpasswd(t, c, mounts)
	port := checkKubeProbes(t, c)
	ann := dep.Spec.Template.Metadata.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/path"] != "/metrics" || ann["prometheus.io/port"] != strconv.Itoa(port) {
		t.Errorf("annotations %v, want prometheus.io/scrape true, path /metrics, port %d", ann, port)
	}
	checkKubeService(t, svc, dep, c)
}

func mapsKeys[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// checkKubeVolumes checks that the data directory is the claim, and
// returns the container's mounts by path, with the volume of each.
func checkKubeVolumes(t *testing.T, pod k8sPodSpec, c k8sContainer, claim string) map[string]string {
	t.Helper()
	volumes := map[string]string{} // name → "pvc:CLAIM" or "secret:NAME"
	for _, v := range pod.Volumes {
		switch {
		case v.PersistentVolumeClaim.ClaimName != "":
			volumes[v.Name] = "pvc:" + v.PersistentVolumeClaim.ClaimName
		case v.Secret.SecretName != "":
			volumes[v.Name] = "secret:" + v.Secret.SecretName
		}
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = volumes[m.Name]
	}
	if got := mounts["/var/lib/regproxy"]; got != "pvc:"+claim {
		t.Errorf("/var/lib/regproxy is mounted from %q, want the claim %s", got, claim)
	}
	return mounts
}

// checkKubeHtpasswd checks that --htpasswd names a file of a mounted
// Secret.
func checkKubeHtpasswd(t *testing.T, c k8sContainer, mounts map[string]string) {
	t.Helper()
	for _, a := range c.Args {
		if file, ok := strings.CutPrefix(a, "--htpasswd="); ok {
			if !strings.HasPrefix(mounts[filepath.Dir(file)], "secret:") {
				t.Errorf("--htpasswd %s is in no mounted Secret (mounts %v)", file, mounts)
			}
			return
		}
	}
	t.Error("no --htpasswd: the Service reaches nodes beyond loopback")
}

// checkKubeProbes checks readiness and liveness on /healthz at the
// container's proxy port, and returns that port's number.
func checkKubeProbes(t *testing.T, c k8sContainer) int {
	t.Helper()
	i := slices.IndexFunc(c.Ports, func(p kubePort) bool { return p.ContainerPort == 3128 })
	if i < 0 {
		t.Fatalf("container ports %+v, want 3128", c.Ports)
	}
	for what, p := range map[string]k8sProbe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port != c.Ports[i].Name {
			t.Errorf("%s probe GET %s on port %q, want /healthz on %q", what, p.HTTPGet.Path, p.HTTPGet.Port, c.Ports[i].Name)
		}
	}
	return c.Ports[i].ContainerPort
}

// checkKubeService checks that the Service selects the pods and targets
// their proxy port.
func checkKubeService(t *testing.T, svc, dep k8sObject, c k8sContainer) {
	t.Helper()
	if len(svc.Spec.Selector) == 0 {
		t.Error("the Service selects no pods")
	}
	for k, v := range svc.Spec.Selector {
		if label, ok := v.(string); !ok || dep.Spec.Template.Metadata.Labels[k] != label {
			t.Errorf("Service selects %s=%v, which the pods do not carry", k, v)
		}
	}
	for _, p := range svc.Spec.Ports {
		if !slices.ContainsFunc(c.Ports, func(q kubePort) bool { return q.Name == p.TargetPort && q.ContainerPort == 3128 }) {
			t.Errorf("Service port %d targets %q, not the container's proxy port", p.Port, p.TargetPort)
		}
	}
}
