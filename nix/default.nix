# nixoci's Nix library: `buildImage` turns derivations into an OCI image that nixoci builds.
#
# It needs nothing but builtins, so it works with any nixpkgs, or none at all (the tests build with
# Nix 2.8, offline, without nixpkgs). Use it through a plain import or the flake's `lib`:
#
#   image = (import ./nix { }).buildImage {
#     name = "localhost/hello"; tag = "1.0";
#     roots = [ hello ];
#     config = { cmd = [ "${hello}/bin/hello" ]; };   # the fields of image.toml
#     nixoci = nixoci-package;                       # a derivation with bin/nixoci, or a path
#   };
#
# Like streamLayeredImage and nix2container, the result is small: no image bytes in the store. It
# holds the closure (Nix's own record of it: exportReferencesGraph with structured attrs, so NAR
# hashes, sizes and references), the generated image spec and layers files, the plan, and scripts
# that run nixoci: bin/copy-to DEST…, bin/copy-to-podman, bin/copy-to-registry [REF], bin/plan,
# bin/diff-against IMAGE, bin/check [IMAGE], bin/smoke [IMAGE]; each passes further arguments to
# nixoci (`--previous docker://…`, registry flags). `image.oci` is a derivation whose output is the
# OCI layout itself, with the digests `bin/copy-to oci:…` gives.
{ }:
let
  inherit (builtins)
    attrNames
    baseNameOf
    concatLists
    concatStringsSep
    filter
    genList
    head
    isAttrs
    isList
    length
    listToAttrs
    placeholder
    replaceStrings
    toJSON
    ;

  # A shell word: 'text', quotes inside escaped.
  quote = s: "'" + replaceStrings [ "'" ] [ "'\\''" ] (toString s) + "'";
  words = list: concatStringsSep " " (map quote list);

  dropNulls = attrs: removeAttrs attrs (filter (n: attrs.${n} == null) (attrNames attrs));
  optionals = cond: list: if cond then list else [ ];
  optionalAttrs = cond: attrs: if cond then attrs else { };

  # A Nix system's image platform (OCI names), for image specs that set no `architecture`:
  # nixoci checks every ELF file of the closure against it.
  platformOf =
    system:
    {
      "x86_64-linux" = { architecture = "amd64"; };
      "aarch64-linux" = { architecture = "arm64"; };
      "i686-linux" = { architecture = "386"; };
      "armv7l-linux" = { architecture = "arm"; variant = "v7"; };
      "armv6l-linux" = { architecture = "arm"; variant = "v6"; };
      "powerpc64le-linux" = { architecture = "ppc64le"; };
      "s390x-linux" = { architecture = "s390x"; };
      "riscv64-linux" = { architecture = "riscv64"; };
    }
    .${system} or { };

  # Store names allow [A-Za-z0-9+._?=-]; image names also have '/', ':' and '@'.
  storeName = s: replaceStrings [ "/" ":" "@" ] [ "-" "-" "-" ] s;

  # A file argument (layers, policy, smokeChecks): an attribute set becomes `<what>.json` in the
  # result; a path, a string or a derivation (writeText …) is used as it is.
  fileArg =
    what: out: v:
    if v == null then
      null
    else if isAttrs v && !(v ? outPath) then
      {
        name = "${what}.json";
        content = toJSON v;
        path = "${out}/${what}.json";
      }
    else
      { path = "${v}"; };

  buildImage =
    {
      # The image's name (`localhost/hello`, `ghcr.io/acme/comfyui`) and tag (default "latest").
      name,
      tag ? null,
      # Derivations whose closure is the image's content (or store paths that carry their
      # context, e.g. from builtins.storePath: exportReferencesGraph needs them as inputs).
      roots,
      # The image spec as an attribute set: entrypoint, cmd, env, workdir, user, labels,
      # exposed_ports, users, groups, dirs, files, symlinks, gpu, nix_db (see image.toml), and
      # the platform: architecture, os, variant (default: `system`'s), foreign_elf.
      config ? { },
      # Layer groups: a path to a layers file (TOML or JSON) or an attribute set of that shape.
      layers ? null,
      maxLayers ? null,
      maxLayerSize ? null,
      # "gzip", "gzip:9", "zstd", "zstd:19" or "none".
      compression ? null,
      # The release gate: a path to a policy file or an attribute set; applied by every build.
      policy ? null,
      # Smoke checks (`bin/smoke`): a path to a checks file or an attribute set ({ check = [ … ]; }).
      smokeChecks ? null,
      # nixoci: a derivation with bin/nixoci, or a path to the binary.
      nixoci,
      # The image to build on (`--from`): a reference nixoci reads, e.g. "docker://ghcr.io/acme/base:1"
      # or "oci:${someLayout}:1". Its layers come first and count in maxLayers; its config is
      # inherited where `config` gives nothing. A registry base is read at build time (the plan
      # derivation opens it): inside Nix's sandbox, give an oci: layout in the store instead.
      fromImage ? null,
      # Labels (config) and manifest annotations, merged over config.labels / config.annotations.
      labels ? { },
      annotations ? { },
      # The shell that runs the builders and the scripts. /bin/sh exists in Nix's sandbox; with
      # nixpkgs, `pkgs.runtimeShell`.
      shell ? "/bin/sh",
      # What the builders find on PATH (mkdir, cp, chmod): a list of packages (their bin/) or a
      # PATH string. With nixpkgs: [ pkgs.coreutils ].
      path ? "/usr/bin:/bin",
      # Seconds since 1970 for every mtime and the config's `created` (SOURCE_DATE_EPOCH).
      epoch ? 1,
      system ? (head (if isList roots then roots else [ roots ])).system or builtins.currentSystem,
    }:
    let
      rootList = if isList roots then roots else [ roots ];
      imageName = name;
      imageTag = if tag == null then "latest" else tag;
      drvName = storeName "${baseNameOf imageName}-${imageTag}";
      nixociBin = if isAttrs nixoci then "${nixoci}/bin/nixoci" else "${nixoci}";
      pathString = if isList path then concatStringsSep ":" (map (p: "${p}/bin") path) else path;

      spec =
        if config ? name then
          throw "buildImage ${imageName}: config.name is not used; give `name` and `tag` to buildImage"
        else
          optionalAttrs (!(config ? architecture)) (platformOf system)
          // dropNulls config
          // {
            name = "${imageName}:${imageTag}";
          }
          // optionalAttrs (labels != { } || config ? labels) { labels = (config.labels or { }) // labels; }
          // optionalAttrs (annotations != { } || config ? annotations) {
            annotations = (config.annotations or { }) // annotations;
          };

      # The closure as Nix records it: a structured-attrs derivation's .attrs.json, copied whole
      # (nixoci reads the graphs its `exportReferencesGraph` names). Nix 2.8 gives a
      # structured-attrs builder no $out: it is read from .attrs.sh with shell builtins only.
      closure = derivation {
        name = "${drvName}-closure.json";
        inherit system;
        builder = shell;
        __structuredAttrs = true;
        exportReferencesGraph.closure = rootList;
        args = [
          "-c"
          ''
            set -eu
            PATH=${quote pathString}; export PATH
            attrs_sh=''${NIX_ATTRS_SH_FILE:-.attrs.sh}
            attrs_json=''${NIX_ATTRS_JSON_FILE:-.attrs.json}
            out=
            while IFS= read -r line; do
                case $line in
                "declare -A outputs=(['out']='"*)
                    out=''${line#"declare -A outputs=(['out']='"}
                    out=''${out%%"'"*}
                    ;;
                esac
            done < "$attrs_sh"
            if [ -z "$out" ]; then echo "buildImage: no output path in $attrs_sh" >&2; exit 1; fi
            cp "$attrs_json" "$out"
            :
          ''
        ];
      };

      # nixoci's arguments for this image, its files under `dir`.
      files = dir: {
        layers = fileArg "layers" dir layers;
        policy = fileArg "policy" dir policy;
        smoke = fileArg "smoke" dir smokeChecks;
      };
      inputArgs =
        dir:
        let
          f = files dir;
        in
        [
          "--closure"
          "${dir}/closure.json"
          "--image"
          "${dir}/image.json"
        ]
        ++ optionals (f.layers != null) [
          "--layers"
          f.layers.path
        ]
        ++ optionals (fromImage != null) [
          "--from"
          fromImage
        ]
        ++ optionals (maxLayers != null) [
          "--max-layers"
          (toString maxLayers)
        ]
        ++ optionals (maxLayerSize != null) [
          "--max-layer-size"
          (toString maxLayerSize)
        ];
      makeArgs =
        dir:
        inputArgs dir
        ++ optionals (compression != null) [
          "--compression"
          compression
        ];
      buildArgs =
        dir:
        makeArgs dir
        ++ optionals ((files dir).policy != null) [
          "--policy"
          (files dir).policy.path
        ];

      out = placeholder "out";
      header = what: ''
        #!${shell}
        # ${what}
        # Generated by nixoci's buildImage for ${imageName}:${imageTag}.
        set -eu
        export SOURCE_DATE_EPOCH=${toString epoch}
        nixoci=${quote nixociBin}
      '';
      # Sets $image to the first argument, or (none, or an option first) to this image built
      # into a temporary layout.
      thisImage = ''
        if [ $# -eq 0 ] || case $1 in -?*) true ;; *) false ;; esac; then
            tmp=$(mktemp -d)
            trap 'rm -rf "$tmp"' EXIT
            "$nixoci" build ${words (makeArgs out)} -q -o "oci:$tmp/image:${imageTag}"
            image="oci:$tmp/image:${imageTag}"
        else
            image=$1
            shift
        fi
      '';
      scripts = {
        copy-to =
          header "copy-to DEST… [nixoci build options…]: builds the image into each DEST (oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:REF], docker://REF, -)"
          + ''
            n=0
            for a in "$@"; do
                case $a in -?*) break ;; esac
                n=$((n + 1))
            done
            if [ "$n" -eq 0 ]; then
                echo "usage: $0 DEST… [nixoci build options…]  (DEST: oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:REF], docker://HOST/REPO[:TAG], -)" >&2
                exit 2
            fi
            i=0
            for a in "$@"; do
                shift
                if [ "$i" -lt "$n" ]; then set -- "$@" -o "$a"; else set -- "$@" "$a"; fi
                i=$((i + 1))
            done
            exec "$nixoci" build ${words (buildArgs out)} "$@"
          '';
        copy-to-podman =
          header "copy-to-podman [nixoci build options…]: builds the image into `podman load` ($PODMAN: another program, e.g. docker)"
          + ''
            status=$(mktemp)
            trap 'rm -f "$status"' EXIT
            { rc=0; "$nixoci" build ${words (buildArgs out)} -o - "$@" || rc=$?; echo "$rc" > "$status"; } |
                "''${PODMAN:-podman}" load
            rc=$(cat "$status")
            exit "$rc"
          '';
        copy-to-registry =
          header "copy-to-registry [REF] [nixoci build options…]: pushes the image to REF (default ${imageName}:${imageTag})"
          + ''
            ref=${quote "${imageName}:${imageTag}"}
            if [ $# -gt 0 ] && case $1 in -?*) false ;; *) true ;; esac; then
                ref=$1
                shift
            fi
            case $ref in docker://*) ;; *) ref=docker://$ref ;; esac
            exec "$nixoci" build ${words (buildArgs out)} -o "$ref" "$@"
          '';
        plan =
          header "plan [nixoci plan options…]: the layer plan (--json, --previous IMAGE|PLAN.json)"
          + ''
            exec "$nixoci" plan ${words (inputArgs out)} "$@"
          '';
        diff-against =
          header "diff-against IMAGE [nixoci diff options…]: what changed from IMAGE to this image"
          + ''
            if [ $# -eq 0 ]; then
                echo "usage: $0 IMAGE [nixoci diff options…]" >&2
                exit 2
            fi
            old=$1
            shift
            tmp=$(mktemp -d)
            trap 'rm -rf "$tmp"' EXIT
            "$nixoci" build ${words (makeArgs out)} -q -o "oci:$tmp/image:${imageTag}"
            "$nixoci" diff "$old" "oci:$tmp/image:${imageTag}" "$@"
          '';
        check =
          header "check [IMAGE] [nixoci check options…]: the policy's verdict on IMAGE (default: this image)"
          + (
            if (files out).policy == null then
              ''
                echo "$0: buildImage ${imageName} was given no policy" >&2
                exit 2
              ''
            else
              thisImage
              + ''
                "$nixoci" check "$image" --policy ${quote (files out).policy.path} "$@"
              ''
          );
        smoke =
          header "smoke [IMAGE] [nixoci smoke options…]: runs the smoke checks in a container of IMAGE (default: this image)"
          + (
            if (files out).smoke == null then
              ''
                echo "$0: buildImage ${imageName} was given no smokeChecks" >&2
                exit 2
              ''
            else
              thisImage
              + ''
                "$nixoci" smoke "$image" --checks ${quote (files out).smoke.path} "$@"
              ''
          );
      };

      # Every file of the result but closure.json and plan.json: name → content.
      generated =
        [
          {
            name = "image.json";
            content = toJSON spec;
          }
        ]
        ++ filter (f: f != null && f ? content) (map (k: (files out).${k}) [ "layers" "policy" "smoke" ])
        ++ map (s: {
          name = "bin/${s}";
          content = scripts.${s};
        }) (attrNames scripts);
      fileAttr = i: "file${toString i}";
      indices = genList (i: i) (length generated);

      image = derivation (
        {
          name = drvName;
          inherit system;
          builder = shell;
          PATH = pathString;
          passAsFile = map fileAttr indices;
          args = [
            "-c"
            (
              ''
                set -eu
                mkdir -p "$out/bin"
                cp ${quote closure} "$out/closure.json"
              ''
              + concatStringsSep "" (
                map (
                  i: ''cp "''$${fileAttr i}Path" ${quote "${out}/${(builtins.elemAt generated i).name}"}'' + "\n"
                ) indices
              )
              + ''
                chmod 0555 ${words (map (s: "${out}/bin/${s}") (attrNames scripts))}
                # Checks the image spec and layers file (a misspelt field fails here, named) and
                # records the plan.
                ${quote nixociBin} plan ${words (inputArgs out)} --json > "$out/plan.json"
                :
              ''
            )
          ];
        }
        // listToAttrs (
          map (i: {
            name = fileAttr i;
            value = (builtins.elemAt generated i).content;
          }) indices
        )
      );

      # The OCI layout itself, for a binary cache: the same bytes as `bin/copy-to oci:DIR:TAG`.
      oci = derivation {
        name = "${drvName}-oci";
        inherit system;
        builder = shell;
        PATH = pathString;
        SOURCE_DATE_EPOCH = toString epoch;
        args = [
          "-c"
          ''
            set -eu
            ${quote nixociBin} build ${words (buildArgs "${image}")} --no-cache -q -o "oci:$out:${imageTag}"
            :
          ''
        ];
      };
    in
    image
    // {
      inherit imageName imageTag oci closure;
      plan = "${image}/plan.json";
      passthru = {
        inherit imageName imageTag oci closure;
        plan = "${image}/plan.json";
      };
    };
in
{
  inherit buildImage;
}
