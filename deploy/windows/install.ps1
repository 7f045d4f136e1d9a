<#
.SYNOPSIS
    Install (or remove) cri-shim as a Windows service on a Windows Server 2022+ node.

.DESCRIPTION
    - checks the OS build (20348+) and the Containers feature (Hyper-V too when -HyperV is given);
    - creates C:\ProgramData\cri-shim with an ACL for SYSTEM and Administrators only (the daemon's records,
      layers and utility VM disks live there);
    - creates a Python virtual environment under -InstallDir and installs cri-shim from -Source;
    - copies config.toml, kubelet-config.yaml and runtime-class.yaml next to it;
    - registers the service "cri-shim" (LocalSystem, automatic start, restart on failure after 5 s) running
      `python -m cri_shim.windows_service --config <config>`, which supervises `python -m cri_shim serve`;
    - starts it and prints the kubelet flags (--config kubelet-config.yaml, endpoint npipe:////./pipe/cri-shim).

    NOT VERIFIED on a real Windows node yet (see README, "not verified on Windows yet").

.EXAMPLE
    .\install.ps1 -Source C:\src\cri-shim
    .\install.ps1 -Uninstall
#>
[CmdletBinding()]
param(
    [string]$Source = (Resolve-Path "$PSScriptRoot\..\..").Path,
    [string]$InstallDir = "C:\Program Files\cri-shim",
    [string]$DataDir = "C:\ProgramData\cri-shim",
    [string]$Python = "py.exe",
    [switch]$HyperV,
    [switch]$Uninstall
)

$ErrorActionPreference = "Stop"
$ServiceName = "cri-shim"
$MinBuild = 20348

function Assert-Admin {
    $id = [Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = New-Object Security.Principal.WindowsPrincipal($id)
    if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw "install.ps1 must run as Administrator (HCS and the service control manager require it)"
    }
}

function Assert-Node {
    $build = [Environment]::OSVersion.Version.Build
    if ($build -lt $MinBuild) {
        throw "Windows build $build is too old: cri-shim needs Windows Server 2022 (build $MinBuild) or later"
    }
    $features = @("Containers")
    if ($HyperV) { $features += "Microsoft-Hyper-V" }
    foreach ($f in $features) {
        $state = (Get-WindowsOptionalFeature -Online -FeatureName $f).State
        if ($state -ne "Enabled") {
            throw "Windows feature $f is $state; enable it (Enable-WindowsOptionalFeature -Online -FeatureName $f) and reboot"
        }
    }
}

function Remove-CriShim {
    $svc = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
    if ($svc) {
        if ($svc.Status -ne "Stopped") { Stop-Service -Name $ServiceName -Force }
        & sc.exe delete $ServiceName | Out-Null
        if ($LASTEXITCODE -ne 0) { throw "sc.exe delete $ServiceName failed ($LASTEXITCODE)" }
    }
    if (Test-Path $InstallDir) { Remove-Item -Recurse -Force $InstallDir }
    Write-Host "cri-shim removed. $DataDir (pod records, layers) is kept; delete it by hand once no pod runs."
}

function Set-PrivateAcl([string]$Path) {
    New-Item -ItemType Directory -Force -Path $Path | Out-Null
    # Only SYSTEM and Administrators: the directory holds container layers and the daemon's state.
    & icacls.exe $Path /inheritance:r /grant:r "SYSTEM:(OI)(CI)F" "BUILTIN\Administrators:(OI)(CI)F" | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "icacls on $Path failed ($LASTEXITCODE)" }
}

function Install-CriShim {
    Assert-Node
    Set-PrivateAcl $DataDir
    foreach ($d in @("root", "run", "windows", "logs")) { New-Item -ItemType Directory -Force -Path "$DataDir\$d" | Out-Null }
    New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null

    $venv = Join-Path $InstallDir "venv"
    & $Python -3.11 -m venv $venv
    if ($LASTEXITCODE -ne 0) { throw "creating the Python 3.11 virtual environment failed" }
    $py = Join-Path $venv "Scripts\python.exe"
    & $py -m pip install --quiet --upgrade pip
    & $py -m pip install --quiet $Source
    if ($LASTEXITCODE -ne 0) { throw "pip install $Source failed" }

    $config = Join-Path $DataDir "config.toml"
    if (-not (Test-Path $config)) { Copy-Item "$PSScriptRoot\config.toml" $config }
    Copy-Item "$PSScriptRoot\kubelet-config.yaml" (Join-Path $InstallDir "kubelet-config.yaml") -Force
    Copy-Item "$PSScriptRoot\runtime-class.yaml" (Join-Path $InstallDir "runtime-class.yaml") -Force

    $binPath = "`"$py`" -m cri_shim.windows_service --config `"$config`""
    if (Get-Service -Name $ServiceName -ErrorAction SilentlyContinue) {
        Stop-Service -Name $ServiceName -Force
        & sc.exe config $ServiceName binPath= $binPath start= auto | Out-Null
    } else {
        & sc.exe create $ServiceName binPath= $binPath start= auto obj= LocalSystem DisplayName= "cri-shim container runtime" | Out-Null
    }
    if ($LASTEXITCODE -ne 0) { throw "registering the service failed ($LASTEXITCODE)" }
    & sc.exe description $ServiceName "Kubernetes CRI runtime on the Host Compute Service (cri-shim)" | Out-Null
    # Restart after 5 s on failure (the service host reports an unexpected daemon exit as a failure).
    & sc.exe failure $ServiceName reset= 86400 actions= restart/5000/restart/5000/restart/5000 | Out-Null
    & sc.exe failureflag $ServiceName 1 | Out-Null
    Start-Service -Name $ServiceName

    Write-Host "cri-shim is running. kubelet:"
    Write-Host "  kubelet.exe --windows-service --config=`"$InstallDir\kubelet-config.yaml`" --kubeconfig=<...> --hostname-override=<node>"
    Write-Host "  (endpoint: npipe:////./pipe/cri-shim; RuntimeClasses: kubectl apply -f `"$InstallDir\runtime-class.yaml`")"
}

Assert-Admin
if ($Uninstall) { Remove-CriShim } else { Install-CriShim }
