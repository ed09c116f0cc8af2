{
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    nixoci.url = "github:acme/nixoci"; # wherever you keep nixoci
    nixoci.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = { self, nixpkgs, nixoci }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs { inherit system; config = { allowUnfree = true; cudaSupport = true; }; };
      python = pkgs.python314;
      customPythonPackages = import ./python-packages.nix { inherit pkgs python; };
      pythonWithAllPackages = python.withPackages (ps: with ps; [
        numpy scipy pillow transformers diffusers accelerate safetensors einops
        customPythonPackages.torch customPythonPackages.flash-attn
        customPythonPackages.sageattention customPythonPackages.nunchaku
        # … the rest of the ~120 packages
      ]);
      comfyui = pkgs.fetchFromGitHub {
        owner = "comfyanonymous"; repo = "ComfyUI"; rev = "v0.3.60";
        hash = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
      };
      home = "/home/comfy";
      owned = path: { inherit path; uid = 1000; gid = 1000; mode = "0755"; };
    in {
      packages.${system} = {
        inherit pythonWithAllPackages comfyui;
        image = nixoci.lib.buildImage {
          name = "ghcr.io/acme/comfyui";
          tag = "1.4";
          roots = [ pythonWithAllPackages comfyui ];
          config = {
            gpu = true;
            entrypoint = [ "python3" "${comfyui}/main.py" ];
            cmd = [ "--listen" "0.0.0.0" "--port" "8188" "--base-directory" "${home}/ComfyUI" ];
            env = [
              "PATH=${pythonWithAllPackages}/bin" "HOME=${home}" "LANG=C.UTF-8"
              "PYTHONDONTWRITEBYTECODE=1"
              "HF_HOME=${home}/.cache/huggingface" "TORCH_HOME=${home}/.cache/torch"
            ];
            workdir = "${home}/ComfyUI";
            user = "comfy";
            exposed_ports = [ "8188/tcp" ];
            labels."org.opencontainers.image.title" = "ComfyUI";
            users = [ { name = "comfy"; uid = 1000; gid = 1000; inherit home; } ];
            groups = [ { name = "comfy"; gid = 1000; } ];
            dirs = [ { path = "/tmp"; mode = "1777"; } ] ++ map owned [
              home "${home}/.cache" "${home}/ComfyUI" "${home}/ComfyUI/models"
              "${home}/ComfyUI/input" "${home}/ComfyUI/output" "${home}/ComfyUI/user"
            ];
          };
          layers = "${nixoci}/layers/comfyui.toml";
          policy = "${nixoci}/policies/comfyui.toml";
          smokeChecks = "${nixoci}/policies/smoke-comfyui.toml";
          nixoci = nixoci.packages.${system}.nixoci;
          shell = pkgs.runtimeShell;
          path = [ pkgs.coreutils ];
        };
      };
      apps.${system}.push = {
        type = "app";
        program = "${self.packages.${system}.image}/bin/copy-to-registry";
      };
    };
}
